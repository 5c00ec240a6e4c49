"""TLS: SSL contexts built from key material, credential identities (which context a job uses),
SNI policy, handshake failure classification and diagnostic handshakes."""

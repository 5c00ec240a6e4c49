"""One call over HTTP: the transport (sessions per credential identity, resolver, allow-list),
the call itself (route, request, bounded answer, result), SOAP envelopes and safe XML."""

"""What the tests share, one module per kind of part; test modules import from here, never from
each other, and ``tests/conftest.py`` holds only fixtures built on these.

Peers on loopback
    ``servers`` (nginx, ``openssl s_server``, tinyproxy), ``soapserver`` (spyne behind nginx and a
    hostile SOAP peer), ``keepalive_server`` (an HTTP/1.1 peer that keeps connections open),
    ``openbao`` (a dev OpenBao), ``pg`` (a fresh PostgreSQL database per test),
    ``fake_instance`` (the instance's ``ecc_queue`` Table API), ``ccp`` (a CyberArk CCP), and
    ``revocation`` (a CA that revokes: its CRL served by nginx, ``openssl ocsp``).
Material
    ``pki`` (the shared throwaway CA and certificates), ``keytool`` (keystores made by ``keytool``
    and ``openssl``), ``configs`` (config.xml writers).
The agent
    ``jobs`` (a job's fields and the parsed Job), ``engines`` (an Engine closed after the test),
    ``cli`` (the command line as a subprocess), ``daemons`` (``agent run`` and its log),
    ``queues`` (an opened embedded queue as fixture ``queue``).
Reading what came back
    ``results`` (echo and error kind), ``leaks`` (a key's forms, files written, for secret checks).
"""

"""``agent demo``: a throwaway PKI, local mTLS servers with SNI virtual hosts, and jobs through the
real queue and daemon. Tests reuse its PKI and servers; the daemon does not."""

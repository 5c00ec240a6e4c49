"""config.xml: parameters parsed into one frozen ``AgentConfig``, environment overrides, and
``secure="true"`` values decrypted in memory (``secure``). Pure parsing plus the key file."""

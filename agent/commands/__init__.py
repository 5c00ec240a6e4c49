"""The command line: ``agent run | enqueue | result | call | demo | validate | sni-check``.

The top layer: it reads arguments, assembles what a command needs from the layers below and
turns errors into exit codes. Nothing below imports from here."""

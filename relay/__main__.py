"""`python -m relay` is `relayctl`."""

from relay.cli import main

main()

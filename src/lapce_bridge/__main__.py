from lapce_bridge.cli import main

main()

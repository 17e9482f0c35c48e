from errands.cli.app import main

main()

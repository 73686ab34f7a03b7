from mtransfer.cli import main

main()

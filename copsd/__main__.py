from copsd.cli import main

main()

from tailor_cli import main

main()

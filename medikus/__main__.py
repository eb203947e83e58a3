from medikus.cli import main

main()

from mrsa.cli import main

main()

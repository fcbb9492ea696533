"""`python -m paas` runs the command line, as the `paas` console script does."""

from paas.cli.main import main

if __name__ == "__main__":
    main()

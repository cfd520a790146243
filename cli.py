"""`python cli.py ...` is `copsd ...` (for a checkout without installing the console script)."""

from copsd.cli import main

if __name__ == "__main__":
    main()

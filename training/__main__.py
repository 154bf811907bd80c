"""``python -m training ...`` is ``python -m training.pipeline ...``."""

from training.pipeline import main

if __name__ == "__main__":
    main()

"""Train: python app/train.py experiment=mnist_cnn   (groups and options: python app/train.py --help)."""

from attnlab.cli import train

if __name__ == "__main__":
    train()

"""The model registry (MLflow's): python app/registry.py register|list|compare|promote key=value ... (--help)."""

from attnlab.cli import registry

if __name__ == "__main__":
    registry()

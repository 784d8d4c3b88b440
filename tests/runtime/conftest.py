"""Fixtures of the runtime tests."""
import numpy as np
import pytest

from odc.runtime.data import load_sample
from tests.runtime.files import idx_bytes


@pytest.fixture(autouse=True)
def no_user_data(tmp_path, monkeypatch):
    """Keep the user's $ODC_DATA and cache folder (and its decoded images) out of every test."""
    monkeypatch.delenv("ODC_DATA", raising=False)
    monkeypatch.setenv("ODC_DATA_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An EMNIST Balanced folder in the official layout (images transposed, a mapping file) with
    10 train and 4 test images per class from the embedded sample: 470 / 188 images."""
    folder = tmp_path_factory.mktemp("emnist")
    s = load_sample()
    for part, x, y, k in (("train", s.train_x, s.train_y, 10), ("test", s.test_x, s.test_y, 4)):
        pick = np.concatenate([np.flatnonzero(y == c)[:k] for c in range(len(s.classes))])
        images = x[pick].transpose(0, 2, 1)  # stored transposed, as in the official files
        (folder / f"emnist-balanced-{part}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"emnist-balanced-{part}-labels-idx1-ubyte").write_bytes(idx_bytes(y[pick]))
    mapping = "".join(f"{i} {ord(c)}\n" for i, c in enumerate(s.classes))
    (folder / "emnist-balanced-mapping.txt").write_text(mapping)
    return folder

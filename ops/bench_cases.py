"""The models the benchmarks drive (ops/bench.py, ops/peer_bench.py): names, tensors and the batch-1 inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"


@dataclass(frozen=True)
class ModelCase:
    """A model to benchmark: its name in the server, tensor names and the batch-1 inputs to cycle through."""

    name: str
    input_name: str
    output_name: str
    samples: list[np.ndarray]
    label: str = ""  # the table's heading, when it is not the model's name
    encoded: list[bytes] | None = None  # served as these JPEGs instead (raw OpenVINO takes `samples`, decoded)

    @property
    def heading(self) -> str:
        return self.label or self.name

    @property
    def base_path(self) -> Path:
        return MODELS_DIR / self.name

    def samples_file(self, directory: Path) -> Path:
        """The samples as one .npy array (a row per request), or the JPEGs as an .npz, for a client in another
        process (ops/v2_load.py)."""
        if self.encoded is not None:
            path = directory / f"{self.heading}-images.npz"
            np.savez(path, *(np.frombuffer(image, dtype=np.uint8) for image in self.encoded))
        else:
            path = directory / f"{self.heading}-samples.npy"
            np.save(path, np.concatenate(self.samples))
        return path

    def model_file(self) -> Path:
        """The IR of the highest numeric version, the one the server serves by default."""
        versions = sorted((int(p.name), p) for p in self.base_path.iterdir() if p.is_dir() and p.name.isdigit())
        return next(versions[-1][1].glob("*.xml"))


def digits_case() -> ModelCase:
    """The digits MLP on the rows of the held-out images, one row per request."""
    images = np.load(MODELS_DIR / "data" / "imgs.npy", allow_pickle=False).astype(np.float32)
    rows = [np.ascontiguousarray(images[i : i + 1]) for i in range(len(images))]
    return ModelCase("digits", "x", "probabilities", rows)


def resnet_case() -> ModelCase:
    """The INT8 ResNet-50 on one fixed random image."""
    image = np.random.default_rng(0).uniform(0, 255, size=(1, 3, 224, 224)).astype(np.float32)
    return ModelCase("resnet", "data", "prob", [image])


def resnet_jpeg_case() -> ModelCase:
    """The INT8 ResNet-50 fed 224x224 JPEGs of scikit-learn's two sample photographs, decoded on the worker;
    raw OpenVINO gets the same images decoded (BGR, NCHW, as the server decodes them)."""
    import cv2
    from sklearn.datasets import load_sample_images

    encoded, samples = [], []
    for photo in load_sample_images().images:  # RGB
        square = photo[:, : photo.shape[0]] if photo.shape[1] > photo.shape[0] else photo[: photo.shape[1]]
        image = cv2.resize(cv2.cvtColor(square, cv2.COLOR_RGB2BGR), (224, 224), interpolation=cv2.INTER_AREA)
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        encoded.append(jpeg)
        samples.append(np.ascontiguousarray(decoded.transpose(2, 0, 1)[np.newaxis], dtype=np.float32))
    return ModelCase("resnet", "data", "prob", samples, label="resnet-jpeg", encoded=encoded)


CASES = {"digits": digits_case, "resnet": resnet_case, "resnet-jpeg": resnet_jpeg_case}

"""The classifier in a worker process gives the same answers without TensorFlow here."""

import subprocess
import sys

import numpy as np

from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.remote import RemoteClassifier


def test_remote_classifier_matches_the_in_process_one(tiny_model):
    crops = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)
    expected = CellClassifier(tiny_model).classify(crops)
    with RemoteClassifier(tiny_model) as remote:
        assert remote.classes == ["lobed", "round"]
        np.testing.assert_allclose(
            remote.classify(crops)[["p_lobed", "p_round"]],
            expected[["p_lobed", "p_round"]],
            atol=1e-5,
        )
        assert remote.classify(crops[:0]).empty


def test_remote_classifier_keeps_tensorflow_out_of_the_calling_process(tiny_model):
    code = (
        "import sys, numpy as np\n"
        "from napari_bloodcell.classification.remote import RemoteClassifier\n"
        f"with RemoteClassifier({str(tiny_model)!r}) as c:\n"
        "    p = c.predict_proba(np.zeros((2, 32, 32, 3), np.float32))\n"
        "assert p.shape == (2, 2), p.shape\n"
        "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]

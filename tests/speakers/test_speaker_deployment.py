"""The speaker deployment (BatchQueue over BatchedEmbedder) with random CAM++, in Serve.

Windows sent one at a time (each forward holds one) and all at once (windows of what would
be many requests share forwards) must give the same embeddings, and the concurrent run
must really have batched. One small app of just this deployment, deleted after.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.config import SpeakerSettings
from serve_app.core.errors import InvalidRequestError
from serve_app.core.types import EmbeddingJob
from serve_app.online.deployments.speakers import SpeakerDeployment
from tests.conftest import replica_options, undeploy
from tests.speakers.test_embedders import ACROSS_BATCH_SHAPES_ATOL

APP = "speakers_campplus_test"


def _settings() -> SpeakerSettings:
    return SpeakerSettings.model_validate(
        {
            "backend": "campplus",
            "model": "campplus-random",
            "cpu_threads": 1,
            "batch": {"max_batch_audio_s": 24, "max_batch_items": 16, "batch_wait_timeout_s": 0.05},
        }
    )


@pytest.fixture(scope="module")
def speakers(serve_instance, campplus_models_dir):
    from ray import serve

    app = SpeakerDeployment.options(name="SpeakerDeployment", **replica_options()).bind(
        _settings(), str(campplus_models_dir)
    )
    handle = serve.run(app, name=APP, route_prefix=None)
    yield handle
    undeploy(APP)


def test_batched_equals_one_at_a_time_through_the_deployment(speakers):
    rng = np.random.default_rng(3)
    # Mostly full 1.5 s windows, some shorter (a short VAD segment is one window).
    lengths_s = [1.5] * 20 + [0.9, 0.7, 1.2, 0.9]
    jobs = [
        EmbeddingJob(
            (0.1 * rng.standard_normal(round(s * 16000))).astype(np.float32), None, f"r{i}"
        )
        for i, s in enumerate(lengths_s)
    ]

    alone = [speakers.embed.remote(job).result() for job in jobs]
    assert speakers.batch_stats.remote().result()["batch_size_counts"] == {1: len(jobs)}
    together = [r.result() for r in [speakers.embed.remote(job) for job in jobs]]
    stats = speakers.batch_stats.remote().result()
    assert max(stats["batch_size_counts"]) > 1, stats  # it did batch
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=ACROSS_BATCH_SHAPES_ATOL)
    # Every window got its own embedding back (no two the same).
    assert len({e.tobytes() for e in together}) == len(jobs)

    with pytest.raises(InvalidRequestError):  # longer than a whole batch
        speakers.embed.remote(EmbeddingJob(np.zeros(25 * 16000, np.float32))).result()

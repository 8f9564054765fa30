"""The engine as Ray Serve deployments: target and draft as separate deployments, answers unchanged."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.model]


def test_target_with_a_separate_draft_deployment_answers_like_plain_decoding(serve_http_port, llm_engine,
                                                                           sql_and_chat_prompts):
    from ray import serve

    from tessera.workers.llm.serve import LLMServerConfig, build_app

    config = LLMServerConfig(
        speculative={"method": "ngram", "ngram_min": 1, "adaptive": False, "max_draft_tokens": 3},
        draft_deployment=True,
        ray_actor_options={"num_cpus": 0.1},
        draft_ray_actor_options={"num_cpus": 0.1},
    )
    handle = serve.run(build_app(config), name="llm-test", route_prefix="/llm-test")
    try:
        prompt = sql_and_chat_prompts[0]
        answer = handle.generate.remote({"prompt": prompt, "max_new_tokens": 24}).result(timeout_s=600)
        plain = llm_engine.generate(prompt, max_new_tokens=24)
        assert answer["token_ids"] == plain.token_ids
        assert answer["stats"]["method"] == "ngram"
        assert answer["stats"]["drafted_tokens"] > 0  # drafted by the DraftServer replica

        pieces = list(handle.options(stream=True).stream.remote({"prompt": prompt, "max_new_tokens": 24}))
        assert "".join(pieces) == plain.text

        with pytest.raises(Exception, match="max_new_tokens: must be a positive integer"):
            handle.generate.remote({"prompt": prompt, "max_new_tokens": 0}).result(timeout_s=60)
        with pytest.raises(Exception, match="prompt: give exactly one of prompt and messages"):
            handle.generate.remote({"max_new_tokens": 4}).result(timeout_s=60)
    finally:
        serve.delete("llm-test")

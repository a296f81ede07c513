"""The registered datasets: each name's local copy (relative to the data directory), Hub id, and the public origin
(URL and sha256) of that copy's exact bytes; a declarative table read by :mod:`im_pipeline.data.sources` and
:mod:`im_pipeline.data.fetch`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset."""

    name: str
    description: str
    local_path: str | None  # relative to the data directory
    hub_id: str | None = None
    hub_config: str | None = None
    hub_data_files: str | None = None
    hub_split: str = "train"
    single_turn_only: bool = False
    upstream: str = ""  # where the file originally comes from (for people building a local copy)
    url: str | None = None  # public origin of the local copy's exact bytes (``im-pipeline data fetch``)
    sha256: str | None = None  # of the local copy: a fetched file must match it
    # Rows left out wherever the set is loaded (local copy or Hub): raw field -> values dropped, e.g.
    # {"dataset": ("selfinstruct",)}. The kept rows keep the ids of their row numbers in the whole file.
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_PAPER_DATA = "GitHub ZhengxiangShi/InstructionModelling @ 325b77e, data"
_PAPER = ("ZhengxiangShi/InstructionModelling", "325b77e256d44e6280ba123a8781b26ef85ec362")
_LIMA = _raw("hiyouga/LLaMA-Factory", "b9cdff41bbb6084380606cde6c875c994b6b1868", "data/lima.json")
_LIMA_SHA = "1d447bd5d4750e651a6e28660e452c24d18d18e10e1d334b3c8277c2aa956322"
_ALPAGASUS = ("gpt4life/alpagasus", "95ad3e52510df8c0a2f0dd6cbe50b501acde83a1")
_ALPACA_EVAL = ("tatsu-lab/alpaca_eval", "cd543a149df89434d8a54582c0151c0b945c3d20")

REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "lima",
            "LIMA, all conversations (1,000 single-turn + multi-turn; the paper's 1,030; local copy 1,029)",
            "lima/lima.json",
            hub_id="GAIR/lima",
            upstream="hiyouga/LLaMA-Factory data/lima.json @ b9cdff4 (Alpaca style with history)",
            url=_LIMA,
            sha256=_LIMA_SHA,
        ),
        DatasetSpec(
            "lima_full",
            "alias of 'lima': all LIMA conversations including the multi-turn ones",
            "lima/lima.json",
            hub_id="GAIR/lima",
            url=_LIMA,
            sha256=_LIMA_SHA,
        ),
        DatasetSpec(
            "lima_1k",
            "LIMA single-turn subset (1,000 conversations)",
            "lima/lima.json",
            hub_id="GAIR/lima",
            single_turn_only=True,
            url=_LIMA,
            sha256=_LIMA_SHA,
        ),
        DatasetSpec(
            "dolly_3k",
            "AlpaGasus Dolly 3k (ChatGPT-filtered databricks-dolly-15k)",
            "alpagasus/dolly_3k.json",
            upstream="gpt4life/alpagasus data/filtered/dolly_3k.json",
            url=_raw(*_ALPAGASUS, "data/filtered/dolly_3k.json"),
            sha256="cb8d16e85ec217a53587c96596a1e8971b8d72a2fd9d5bc23a2dd3d57b59eeea",
        ),
        DatasetSpec(
            "alpaca_5k",
            "AlpaGasus Alpaca 5k: Alpaca 52k filtered by Claude, threshold 4.5 (claude_t45)",
            "alpagasus/claude_t45.json",
            upstream="gpt4life/alpagasus data/filtered/claude_t45.json",
            url=_raw(*_ALPAGASUS, "data/filtered/claude_t45.json"),
            sha256="726de12839a57201915867a0cdaec5010619915d8668fa57ff5fa9efa6e893f3",
        ),
        DatasetSpec(
            "alpaca_random_9k",
            "9k random Alpaca examples (AlpaGasus random baseline)",
            "alpagasus/random_9k.json",
            upstream="gpt4life/alpagasus data/random/random_9k.json",
            url=_raw(*_ALPAGASUS, "data/random/random_9k.json"),
            sha256="dbb217523fb750e4c56013844e22f5f3363c8c8b01013df5b39e8cabec0e48b0",
        ),
        DatasetSpec(
            "alpaca_chatgpt_9k",
            "AlpaGasus Alpaca 9k filtered by ChatGPT (the paper's 'Dolly 9k' label); Hub copy is unofficial",
            "alpagasus/chatgpt_9k.json",
            hub_id="mlabonne/alpagasus",
            upstream="gpt4life/alpagasus data/filtered/chatgpt_9k.json",
        ),
        # The paper's own processed training files (released code, data/ @ 325b77e): Tulu ``messages`` format with
        # the open-instruct instruction phrasings already applied. Table 5's counting rule on these gives the paper's
        # numbers exactly. No Hub copy: `im-pipeline data fetch` downloads them from the repository at that commit.
        DatasetSpec(
            "paper_lima",
            "LIMA as the paper trained on it (1,030 conversations incl. multi-turn; released lima_data.jsonl)",
            "paper_processed/lima_data.jsonl",
            upstream=f"{_PAPER_DATA}/lima_data.jsonl",
            url=_raw(*_PAPER, "data/lima_data.jsonl"),
            sha256="c15ce7cacc2696192727351f4392dc059608dc5a96d69bb69f8ca461725c15b1",
        ),
        DatasetSpec(
            "paper_dolly_3k",
            "AlpaGasus Dolly 3k as the paper trained on it (2,996; instruction phrasings applied)",
            "paper_processed/alpagasus_3k_dolly.jsonl",
            upstream=f"{_PAPER_DATA}/alpagasus_3k_dolly.jsonl",
            url=_raw(*_PAPER, "data/alpagasus_3k_dolly.jsonl"),
            sha256="28b89ba107e6776179515990d12a231b1a209ee360e21f365341033d8fad9f23",
        ),
        DatasetSpec(
            "paper_alpaca_5k",
            "AlpaGasus Alpaca 5k (claude_t45) as the paper trained on it (5,305; instruction phrasings applied)",
            "paper_processed/alpagasus_claude_t45_alpaca.jsonl",
            upstream=f"{_PAPER_DATA}/alpagasus_claude_t45_alpaca.jsonl",
            url=_raw(*_PAPER, "data/alpagasus_claude_t45_alpaca.jsonl"),
            sha256="7faffd3ac3a580402ddca3dd824616d5d5c81cdc782de330c6b0a3e6d95936fe",
        ),
        # An out-of-domain test set for Alpaca-trained models: AlpacaEval 1.0's 805 prompts with their reference
        # outputs (text-davinci-003), less the 252 of the `selfinstruct` subset (Alpaca's own prompt source).
        DatasetSpec(
            "alpaca_eval_ood",
            "AlpacaEval 1.0 reference outputs (text-davinci-003) without the selfinstruct subset: 553 of 805 "
            "(oasst, koala, helpful_base, vicuna); an out-of-domain test set",
            "alpaca_eval/text_davinci_003/model_outputs.json",
            hub_id="tatsu-lab/alpaca_eval",
            hub_config="alpaca_eval",
            hub_split="eval",
            upstream="tatsu-lab/alpaca_eval results/text_davinci_003/model_outputs.json @ cd543a1",
            url=_raw(*_ALPACA_EVAL, "results/text_davinci_003/model_outputs.json"),
            sha256="af0bc112f08c88bf589bbfe6fc1036806d0a0f6fec9c4d5a4db860f5afe73b4b",
            exclude={"dataset": ("selfinstruct",)},
        ),
        DatasetSpec(
            "less_mmlu_chat",
            "LESS-selected Tulu V2 subset for MMLU (paper: 'Less MMLU Chat')",
            "less/mmlu_chat.jsonl",
            hub_id="princeton-nlp/less_data",
            hub_data_files="mmlu*",
        ),
        DatasetSpec(
            "less_bbh_icl",
            "LESS-selected Tulu V2 subset for BBH (paper: 'Less BBH ICL')",
            "less/bbh_icl.jsonl",
            hub_id="princeton-nlp/less_data",
            hub_data_files="bbh*",
        ),
        DatasetSpec(
            "less_tydiqa",
            "LESS-selected Tulu V2 subset for TyDiQA (paper: 'Less TydiQA')",
            "less/tydiqa.jsonl",
            hub_id="princeton-nlp/less_data",
            hub_data_files="tydiqa*",
        ),
    ]
}

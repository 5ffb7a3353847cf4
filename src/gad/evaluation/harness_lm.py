"""The lm-evaluation-harness model of `gad.evaluation.harness`: its `HFLM` on a model eval already loaded
(no second load), rendering chat prompts the way the rest of eval does: `gad.chat.with_system_prompt` under
`generation.system_prompt`, then the tokenizer's own chat template (the run's)."""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM

from gad.chat import with_system_prompt


class PolicyLM(HFLM):
    """HFLM whose chat prompts carry the project's system-prompt policy (lm-eval's own `system_instruction`
    cannot say "an empty system turn where the template would insert its default", gad.chat's `none`)."""

    system_prompt: str = "none"
    progress: bool = False  # lm-eval's own tqdm bars (it passes disable=False itself, past TQDM_DISABLE)

    # The request methods that draw a bar take `disable_tqdm`; the evaluator never sets it.
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not self.progress)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(requests, disable_tqdm=disable_tqdm or not self.progress)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        messages = with_system_prompt(chat_history, self.system_prompt, self.tokenizer)
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
            **self.chat_template_args,
        )


def policy_lm(model, tokenizer, system_prompt: str, batch_size: int, progress: bool = False) -> PolicyLM:
    """`model` (in eval mode on its device, in its dtype) and `tokenizer` (the spec's) as a harness model;
    `progress`: lm-eval's bars (verbose=true)."""
    lm = PolicyLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm.system_prompt, lm.progress = system_prompt, progress
    return lm

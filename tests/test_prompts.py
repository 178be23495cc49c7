from alpaca_helpers.prompts import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, format_prompt, format_training_text

# Written out again here on purpose: the templates must stay character for character Stanford Alpaca's.
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def test_templates_are_alpacas_character_for_character():
    assert PROMPT_WITH_INPUT == ALPACA_WITH_INPUT
    assert PROMPT_NO_INPUT == ALPACA_NO_INPUT


def test_format_prompt_picks_the_template_by_input():
    assert format_prompt({"instruction": "Add.", "input": "2 and 3", "output": "5"}) == \
        ALPACA_WITH_INPUT.format(instruction="Add.", input="2 and 3")
    assert format_prompt({"instruction": "Say hi.", "input": "", "output": "hi"}) == \
        ALPACA_NO_INPUT.format(instruction="Say hi.")
    assert format_prompt({"instruction": "Say hi."}) == ALPACA_NO_INPUT.format(instruction="Say hi.")


def test_training_text_is_prompt_output_eos():
    example = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert format_training_text(example, "</s>") == format_prompt(example) + "hi</s>"

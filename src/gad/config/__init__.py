"""Configs: the typed definition of each config concern, and the validation of a composed config.

    typed.py     a composed node -> its dataclass, every problem one line naming its key
    method.py    method (GAD, KD and its teacher, SeqKD; optimizers, schedulers)
    data.py      data (the teacher-data replay)
    model.py     model.lora
    validate.py  the whole training config, checked once before anything loads
    renamed.py   keys renamed since older run folders were written, read with their new names

The YAML files under conf/ hold each knob's default and its documentation.
"""

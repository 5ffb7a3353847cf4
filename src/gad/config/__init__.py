"""Configs: the typed definition of each config concern, and the validation of a composed config.

    typed.py     a composed node -> its dataclass, every problem one line naming its key
    method.py    method (GAD, KD and its teacher, SeqKD, SODA; optimizers, schedulers, reward terms)
    ropd.py      method=ropd (ROPD and its grader endpoint), imported by registry.py
    registry.py  the methods there are, and the targets a received run config may name
    data.py      data (the teacher-data replay)
    model.py     model.lora
    validate.py  the whole training config, checked once before anything loads
    renamed.py   keys renamed since older run folders were written, read with their new names

A method's knobs are defined once, with default and help, in its dataclass (method.py); registry.py finds
the methods there are (conf/method/*.yaml, GAD_PLUGINS folders). Other concerns' defaults are in conf/.
"""

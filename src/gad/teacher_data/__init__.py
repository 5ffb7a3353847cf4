"""Teacher data: prepare prompt sets (`gad.teacher_data.prepare`) and collect black-box teacher
responses through the shared async API layer (`gad.teacher_data.collect`, built on `gad.api`).

Kept out of `gad.data` so the command-line tools start without importing the training stack.
"""

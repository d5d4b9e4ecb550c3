"""Method names that changed (issue 15), so older records stay readable.

`small_labels_only` was the student-sized control from the *pretrained* encoder; `kd_soft_alpha0`
had the soft-target weight alpha = 1 (no ground-truth term); `kd_labels_only` trained on the
teacher's labels. The grid adopts a record of an old name as its renamed cell when the settings
match (research/grid.py); the report reads old names as the new ones (research/report.py).
"""

LEGACY_METHODS = {"small_labels_only": "control_pretrained_init",
                  "kd_soft_alpha0": "kd_soft_only",
                  "kd_labels_only": "kd_teacher_labels"}

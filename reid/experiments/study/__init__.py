"""The paper's experiments as one resumable grid: regularisers x seeds -> same/cross-domain -> attacks.

- :mod:`~reid.experiments.study.spec`: the study file, validated before anything trains;
- :mod:`~reid.experiments.study.cells`: the cells and what their folders already hold;
- :mod:`~reid.experiments.study.records`: a cell's structured record (``study_record.json``);
- :mod:`~reid.experiments.study.runner`: training, evaluating and attacking the cells, resumably;
- :mod:`~reid.experiments.study.statistics`, :mod:`~reid.experiments.study.report`,
  :mod:`~reid.experiments.study.plots`: long and summary CSVs, the Markdown table and the plots.
"""

from reid.experiments.study.records import RECORD_NAME, CellRecord, missing_runs, read_record
from reid.experiments.study.runner import STUDY_TRIPTYCHS, collect_records, run_study, summarize_study
from reid.experiments.study.spec import StudySpec, load_study, requested_runs, source_domain
from reid.experiments.study.statistics import aggregate, long_rows

__all__ = ["RECORD_NAME", "STUDY_TRIPTYCHS", "CellRecord", "StudySpec", "aggregate", "collect_records",
           "load_study", "long_rows", "missing_runs", "read_record", "requested_runs", "run_study", "source_domain",
           "summarize_study"]

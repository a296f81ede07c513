"""``python -m im_pipeline_flows.cli ...`` = ``im-pipeline ...``."""

from im_pipeline_flows.cli.main import main

raise SystemExit(main())

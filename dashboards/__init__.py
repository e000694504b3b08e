"""The workbench dashboard: one Dash app over every probe (`dashboards.app`), its pages
(`dashboards.pages`), Plotly figure builders (`dashboards.figures`), interactive networkx graphs
(`dashboards.graphs`) and background runs (`dashboards.jobs`, `dashboards.worker`)."""

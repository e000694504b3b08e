"""Dashboard pages: each module exposes `PAGE = DashPage(...)` (see `dashboards.base`); the app
discovers them all and sorts them by `order`."""

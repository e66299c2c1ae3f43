"""`recomposer serve`: the HTTP API and the web app over one persistent job queue (issue 19).

    confine.py   every path a request names, resolved inside the configured folders or refused
    workers.py   one worker thread per device: claims jobs, runs them (tasks/registry.py), stores results
    app.py       the FastAPI app: the API routes, server-sent progress, the web app's files
    static/      the web app (plain HTML, CSS and JavaScript; no build step)
"""

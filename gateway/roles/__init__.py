"""Process roles: each module here is a process `gridline up` starts (web, intake, worker, sweeper, supervisor)
and the rq job entry points the workers run."""

"""The `ovms` command: the process roles (all-in-one, api, worker), the job client, and the settings."""

"""The outside world of the console: the services' HTTP APIs."""

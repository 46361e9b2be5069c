"""The operator side: REPL, rendering, scripted sessions, QMP and HMP servers, the CLI."""

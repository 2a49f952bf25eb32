from services.devkit.cli import app

app()

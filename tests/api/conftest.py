from tests.api.fixtures import prompts_file, tiny_model_dir  # noqa: F401 (fixtures)

"""`make server-user ARGS="name=NAME role=worker|reader"` (`python -m pipeline.lab.users`): add a user to the lab's
tracking server, with what its role needs on the experiment (worker: EDIT, reader: READ), and print where its
environment is kept."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import reported
from pipeline.lab.auth import ROLES, add_user


@hydra.main(config_path=str(CONF_DIR), config_name="server_user", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    env = add_user(Path(cfg.folder).expanduser().resolve(), str(cfg.name), str(cfg.role))
    print(f"user {cfg.name} can now {'write to' if cfg.role == 'worker' else 'read'} the experiment "
          f"({ROLES[str(cfg.role)]}); its environment is in {env} (only you can read it): on the machine that runs "
          f"as {cfg.name}, `set -a; . {env.name}; set +a` before `python -m pipeline ... tracking=server`", flush=True)


if __name__ == "__main__":
    main()

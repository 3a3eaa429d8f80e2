"""`make server-user ARGS="name=NAME role=worker|reader"` (`python -m pipeline.lab.users`): add a user to the lab's
tracking server, with what its role needs on the experiment (worker: EDIT, reader: READ), and print where its
environment is kept. For a user that exists, its role is changed and its password kept."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import reported
from pipeline.lab.auth import ROLES, AuthFiles, add_user


@hydra.main(config_path=str(CONF_DIR), config_name="server_user", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    folder = Path(cfg.folder).expanduser().resolve()
    existed = (AuthFiles(folder / "auth").users / f"{cfg.name}.env").is_file()  # added here before: a role changed
    env = add_user(folder, str(cfg.name), str(cfg.role))
    can = f"can now {'write to' if cfg.role == 'worker' else 'only read'} the experiment ({ROLES[str(cfg.role)]})"
    if not env.is_file():
        print(f"user {cfg.name} {can}; its password is unchanged (it was added another way: no environment file "
              f"here)", flush=True)
        return
    kept = ", its password unchanged" if existed else ""
    print(f"user {cfg.name} {can}{kept}; its environment is in {env} (only you can read it): on the machine that "
          f"runs as {cfg.name}, `set -a; . {env.name}; set +a` before `python -m pipeline ... tracking=server`",
          flush=True)


if __name__ == "__main__":
    main()

"""moto's server, with stack outputs refreshed when a change set is executed.

moto 5.2.5 computes a stack's ``Outputs`` when ``CreateStack`` or ``UpdateStack`` runs, but not
when ``ExecuteChangeSet`` does: a stack made through a change set describes no outputs, and an
updated one keeps its old ones (the same gap as faiscadev/fakecloud#1716 and
localstack/localstack#12536). ``cosmic deploy`` uses change sets and reads outputs, as AWS
allows, so the tests run moto with this one repair: after a change set is applied, the stack's
output map is rebuilt from its resources, as ``Stack.update`` does. Test harness only.

    python -m tests.deploy.moto_server -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

from moto.cloudformation import models
from moto.server import main


def _apply_and_refresh_outputs(self: models.ChangeSet) -> None:
    self.stack.resource_map.update(self.template_dict, self.parameters)
    self.stack.template_dict = self.template_dict
    self.stack.output_map = self.stack._create_output_map()


models.ChangeSet.apply = _apply_and_refresh_outputs  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

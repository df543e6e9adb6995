"""Create or update one CloudFormation stack through a change set, wait, and return its outputs.

A change set, rather than ``CreateStack``/``UpdateStack``, because it is the same call for a new
and an existing stack, and because an unchanged template and parameters come back as "no
changes" instead of an error: running ``cosmic deploy`` twice changes nothing the second time.
A stack whose creation failed (``ROLLBACK_COMPLETE``) holds no resources and cannot be updated,
so it is deleted and created again; a stack busy with another operation is waited for first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from services.deploy.errors import StackError

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
_SUCCEEDED = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")


@dataclass(frozen=True)
class StackResult:
    """How a deployment of one stack ended."""

    name: str
    action: str  # "created", "updated" or "unchanged"
    outputs: dict[str, str]


class StackDeployer:
    """Deploys stacks with one CloudFormation client; ``progress`` gets a line per stack event."""

    def __init__(self, cloudformation: Any, progress: Callable[[str], None], poll_s: float, timeout_s: float,
                 tags: dict[str, str] | None = None) -> None:
        self.cf = cloudformation
        self.progress = progress
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.tags = [{"Key": key, "Value": value} for key, value in (tags or {}).items()]

    def deploy(self, name: str, body: str, parameters: dict[str, str]) -> StackResult:
        stack = self._settled(name)
        if stack is not None and stack["StackStatus"] == "ROLLBACK_COMPLETE":
            self.progress(f"{name} failed to create before and holds nothing: deleting it to create it again")
            known = self._event_ids(stack["StackId"])
            self.cf.delete_stack(StackName=stack["StackId"])
            self._wait(stack["StackId"], name, known, want={"DELETE_COMPLETE"})
            stack = None
        creating = stack is None or stack["StackStatus"] == "REVIEW_IN_PROGRESS"
        change_set = f"cosmic-deploy-{int(time.time() * 1000)}"
        self.cf.create_change_set(
            StackName=name, ChangeSetName=change_set, ChangeSetType="CREATE" if creating else "UPDATE",
            TemplateBody=body, Capabilities=CAPABILITIES, Tags=self.tags,
            Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in sorted(parameters.items())])
        described = self._change_set_ready(name, change_set)
        if described["Status"] == "FAILED":
            reason = described.get("StatusReason", "")
            self.cf.delete_change_set(StackName=name, ChangeSetName=change_set)
            if not creating and any(marker in reason for marker in _NO_CHANGES):
                return StackResult(name, "unchanged", _outputs(stack))  # as described before the change set
            raise StackError(f"change set for {name} failed: {reason or 'no reason given'}", stack=name)
        changes = described.get("Changes") or []
        self.progress(f"{name}: {len(changes)} resource change(s): " + ", ".join(
            f"{c['ResourceChange']['Action']} {c['ResourceChange']['LogicalResourceId']}" for c in changes[:12])
            + (" ..." if len(changes) > 12 else ""))
        known = self._event_ids(name)
        self.cf.execute_change_set(StackName=name, ChangeSetName=change_set)
        final = self._wait(name, name, known, want=_SUCCEEDED)
        return StackResult(name, "created" if creating else "updated", _outputs(final))

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.cf.describe_stacks(StackName=name)["Stacks"][0])
        except ClientError as exc:
            if "does not exist" in str(exc):
                return None
            raise

    def _settled(self, name: str) -> dict[str, Any] | None:
        """The stack once no operation is running on it (None if it does not exist)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            stack = self._describe(name)
            if stack is None or not stack["StackStatus"].endswith("_IN_PROGRESS") \
                    or stack["StackStatus"] == "REVIEW_IN_PROGRESS":
                return stack
            if time.monotonic() > deadline:
                raise StackError(f"{name} stayed {stack['StackStatus']} for {self.timeout_s:.0f} s", stack=name)
            self.progress(f"{name} is {stack['StackStatus']} (another operation): waiting for it")
            time.sleep(self.poll_s)

    def _change_set_ready(self, name: str, change_set: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            described = self.cf.describe_change_set(StackName=name, ChangeSetName=change_set)
            if described["Status"] in ("CREATE_COMPLETE", "FAILED"):
                return dict(described)
            if time.monotonic() > deadline:
                raise StackError(f"change set for {name} stayed {described['Status']} for {self.timeout_s:.0f} s",
                                 stack=name)
            time.sleep(self.poll_s)

    def _wait(self, stack_id: str, name: str, known: set[str], want: set[str]) -> dict[str, Any] | None:
        """Poll until this operation ends, reporting its events; return the stack as it ended (None
        once deleted), or raise with the failures' reasons.

        The stack's status alone cannot say that: right after an update is started it may still
        read UPDATE_COMPLETE from the last one. The operation has ended when a new event (one
        not in ``known``, the events from before it) shows the stack itself in a final state.
        Event ids, not timestamps, tell new from old, so the local clock does not matter.
        """
        failures: list[str] = []
        ended = False
        deadline = time.monotonic() + self.timeout_s
        while True:
            for ev in self._new_events(stack_id, known):
                reason = f" ({ev['ResourceStatusReason']})" if ev.get("ResourceStatusReason") else ""
                self.progress(f"{ev['LogicalResourceId']} {ev['ResourceStatus']}{reason}")
                if ev["ResourceStatus"].endswith("_FAILED"):
                    failures.append(f"{ev['LogicalResourceId']}: {ev.get('ResourceStatusReason', '')}")
                if ev["LogicalResourceId"] == name and ev.get("ResourceType") == "AWS::CloudFormation::Stack" \
                        and not ev["ResourceStatus"].endswith("_IN_PROGRESS"):
                    ended = True
            stack = self._describe(stack_id)
            status = "DELETE_COMPLETE" if stack is None else stack["StackStatus"]
            if (ended or stack is None) and not status.endswith("_IN_PROGRESS"):
                if status in want:
                    return stack
                raise StackError(f"{name} ended {status}" + (": " + "; ".join(failures[-5:]) if failures else ""),
                                 stack=name)
            if time.monotonic() > deadline:
                raise StackError(f"{name} still {status} after {self.timeout_s:.0f} s", stack=name)
            time.sleep(self.poll_s)

    def _event_ids(self, stack_id: str) -> set[str]:
        """The ids of the stack's latest events (its first page): what came before an operation."""
        try:
            page = self.cf.describe_stack_events(StackName=stack_id)
        except ClientError:
            return set()  # no stack yet: no events
        return {ev["EventId"] for ev in page["StackEvents"]}

    def _new_events(self, stack_id: str, known: set[str]) -> list[dict[str, Any]]:
        """Events not in ``known``, oldest first; they join ``known``. Pages run newest first, so the
        walk stops at the first known one."""
        fresh: list[dict[str, Any]] = []
        try:
            for page in self.cf.get_paginator("describe_stack_events").paginate(StackName=stack_id):
                for ev in page["StackEvents"]:
                    if ev["EventId"] in known:
                        break
                    fresh.append(ev)
                else:
                    continue
                break
        except ClientError:
            return []  # a stack deleted by name has no events to show
        known.update(ev["EventId"] for ev in fresh)
        return list(reversed(fresh))


def _outputs(stack: dict[str, Any] | None) -> dict[str, str]:
    """A described stack's outputs by key."""
    return {output["OutputKey"]: output["OutputValue"] for output in (stack or {}).get("Outputs") or []}

"""The local agent's routes, for the JupyterLab panel: detect this machine's GPUs, share them
with the market, stop, and say where sharing stands; and, for a machine without an agent, the
command that shares it (with a provisioning token of the agent's wallet) and its revocation.

They take the Jupyter server's own authentication (its token, or the Lab's login cookie with
its XSRF header), never a market token: the market token the agent signs in for stays here.
"""

from __future__ import annotations

from pydantic import BaseModel

from . import agent_models as a
from .agent import AgentService, ShareRequest
from .endpoints import Call
from .route import Route

AGENT = frozenset({"agent", "both"})


def _agent(call: Call) -> AgentService:
    agent = call.services.agent
    assert agent is not None, "the agent routes are served only where the agent runs"
    return agent


async def detect(call: Call) -> BaseModel:
    report = await _agent(call).detect_native()
    return a.DetectResponse.model_validate(report.to_json())


async def status(call: Call) -> BaseModel:
    return a.AgentStatus.model_validate(await _agent(call).status())


async def share(call: Call) -> BaseModel:
    body: a.ShareRequest = call.body
    agent = _agent(call)
    await agent.share(ShareRequest(body.price, body.name, body.location))
    return a.AgentStatus.model_validate(await agent.status())


async def stop(call: Call) -> BaseModel:
    agent = _agent(call)
    await agent.stop()
    return a.AgentStatus.model_validate(await agent.status())


async def market(call: Call) -> BaseModel:
    return a.MarketSummary.model_validate(await _agent(call).market_summary())


async def install_command(call: Call) -> BaseModel:
    body: a.InstallCommandRequest = call.body
    answer = await _agent(call).provision_command(body.price, body.ttlSeconds, call.origin)
    return a.InstallCommand.model_validate(answer)


async def revoke_install_token(call: Call) -> BaseModel:
    revoked = await _agent(call).revoke_provision_token(call.params["tokenId"])
    return a.RevokedInstallToken(provisionToken=revoked)


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "agent/detect",
        detect,
        "This machine's GPUs, as NVML (else nvidia-smi) sees them (Jupyter's token)",
        a.DetectResponse,
        auth="operator",
        roles=AGENT,
        tag="agent",
    ),
    Route(
        "GET",
        "agent/status",
        status,
        "Where sharing this machine stands: state, provider, workerId, earnings today "
        "(Jupyter's token)",
        a.AgentStatus,
        auth="operator",
        roles=AGENT,
        tag="agent",
    ),
    Route(
        "POST",
        "agent/share",
        share,
        "Share this machine's GPU (or CPU): sign in with the agent's wallet, register, start "
        "the worker; answers at once, GET agent/status follows it to online (Jupyter's token)",
        a.AgentStatus,
        body=a.ShareRequest,
        auth="operator",
        roles=AGENT,
        tag="agent",
        errors=(409, 422),
    ),
    Route(
        "POST",
        "agent/stop",
        stop,
        "Stop sharing: the workers drain and the providers go offline (Jupyter's token)",
        a.AgentStatus,
        auth="operator",
        roles=AGENT,
        tag="agent",
    ),
    Route(
        "GET",
        "agent/market",
        market,
        "The market this agent shares with: online offers and their price range (Jupyter's token)",
        a.MarketSummary,
        auth="operator",
        roles=AGENT,
        tag="agent",
        errors=(502,),
    ),
    Route(
        "POST",
        "agent/install-command",
        install_command,
        "For a machine without an agent: a provisioning token for this agent's wallet and the "
        "exact command that shares that machine with it (Jupyter's token)",
        a.InstallCommand,
        body=a.InstallCommandRequest,
        auth="operator",
        roles=AGENT,
        tag="agent",
        errors=(409, 502),
    ),
    Route(
        "DELETE",
        r"agent/install-command/(?P<tokenId>[^/]+)",
        revoke_install_token,
        "Revoke the provisioning token of an install command: it registers nothing more "
        "(Jupyter's token)",
        a.RevokedInstallToken,
        auth="operator",
        roles=AGENT,
        tag="agent",
        errors=(404, 409, 502),
    ),
)

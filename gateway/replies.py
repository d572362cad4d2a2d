"""Every text Gridline sends a resident, in Chinese and English.

Kept in one table so wording can be reviewed (and later translated) without reading code.
"""

from __future__ import annotations

TEMPLATES: dict[str, dict[str, str]] = {
    "ack_routed": {
        "zh": "您的诉求已受理，编号{number}。分类：{category}；{area}。处理部门：{department}。"
              "回复编号或“查询”可查看进度。",
        "en": "Your appeal is registered as case {number}. Category: {category}; {area}. "
              "Handled by: {department}. Reply with the case number or STATUS to follow it.",
    },
    "ack_triage": {
        "zh": "您的诉求已受理，编号{number}。分类：{category}；{area}。网格中心将尽快核实并分派。"
              "回复编号或“查询”可查看进度。",
        "en": "Your appeal is registered as case {number}. Category: {category}; {area}. "
              "The grid centre will review and assign it shortly. Reply with the case number or "
              "STATUS to follow it.",
    },
    "area_known": {"zh": "所在网格：{grid}", "en": "area: {grid}"},
    "area_unknown": {"zh": "地点待核实", "en": "location to be confirmed"},
    "category_unknown": {"zh": "待分类", "en": "to be classified"},
    "status_line": {
        "zh": "案件{number}：{state}；处理部门：{department}；网格：{grid}；承办人：{worker}；"
              "最近更新：{updated}；办理时限：{deadline}。",
        "en": "Case {number}: {state}; department: {department}; grid: {grid}; assigned to: {worker}; "
              "last update: {updated}; due: {deadline}.",
    },
    "status_none_open": {
        "zh": "您目前没有办理中的诉求。直接发送问题描述即可提交新诉求。",
        "en": "You have no open cases. Send a description of the problem to open one.",
    },
    "status_not_found": {
        "zh": "未找到您提交的编号为{number}的诉求，请核对编号。",
        "en": "No case {number} reported from this number was found. Please check the number.",
    },
    "opted_out": {
        "zh": "您已退订社区通知短信。回复“订阅”可重新订阅。诉求办理进度仍会通知您。",
        "en": "You will no longer receive community notices. Reply START to subscribe again. "
              "Updates on your own cases will still reach you.",
    },
    "opted_in": {
        "zh": "您已重新订阅社区通知短信。回复“退订”可随时退订。",
        "en": "You are subscribed to community notices again. Reply STOP to unsubscribe.",
    },
    "help": {
        "zh": "网格服务热线：直接发送问题描述（地点、情况）即可提交诉求；发送编号或“查询”查看进度；"
              "“退订”停止接收通知，“订阅”恢复。",
        "en": "Grid service line: text a description of the problem (where and what) to report it; "
              "text the case number or STATUS to follow a case; STOP ends notices, START resumes them.",
    },
    "nobody": {"zh": "待分派", "en": "not yet assigned"},
    "nowhere": {"zh": "待核实", "en": "to be confirmed"},
}

STATE_NAMES: dict[str, dict[str, str]] = {
    "received": {"zh": "已受理", "en": "received"},
    "assigned": {"zh": "已分派", "en": "assigned"},
    "accepted": {"zh": "已接单", "en": "accepted"},
    "in_progress": {"zh": "处理中", "en": "in progress"},
    "escalated": {"zh": "已上报", "en": "escalated"},
    "resolved": {"zh": "已办结", "en": "resolved"},
    "closed": {"zh": "已关闭", "en": "closed"},
    "merged": {"zh": "已合并", "en": "merged"},
    "rejected": {"zh": "不予受理", "en": "rejected"},
}


def render(key: str, language: str, **fields: object) -> str:
    table = TEMPLATES[key]
    return table.get(language, table["zh"]).format(**fields)


def state_name(state: str, language: str) -> str:
    return STATE_NAMES.get(state, {}).get(language, state)

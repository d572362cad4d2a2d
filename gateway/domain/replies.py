"""Every text Gridline sends a resident, in Chinese and English.

Kept in one table so wording can be reviewed (and later translated) without reading code.
"""

from __future__ import annotations

# Telegram refuses a message over 4,096 characters (Bot API, sendMessage `text`): whatever a person
# wrote is quoted in others' messages at most EXCERPT characters long, with where to read the rest.
TELEGRAM_LIMIT = 4096
EXCERPT = 1000
QUOTE = 3000  # a worker's note or question quoted to a resident, whose bot has no /case

TEMPLATES: dict[str, dict[str, str]] = {
    "ack_routed": {
        "zh": "您的诉求已受理，编号{number}。分类：{category}；{area}。处理部门：{department}。{assignee}"
              "回复编号或“查询”可查看进度。",
        "en": "Your appeal is registered as case {number}. Category: {category}; {area}. "
              "Handled by: {department}.{assignee} Reply with the case number or STATUS to follow it.",
    },
    "ack_assignee": {"zh": "已分派给{worker}（{role}）。", "en": " Assigned to {worker} ({role})."},
    # A case sent to triage: the classifier was unsure, so no guess is named to the resident.
    "ack_triage": {
        "zh": "您的诉求已受理，编号{number}。问题类别和地点正在核实，网格中心将尽快分派。"
              "回复编号或“查询”可查看进度。",
        "en": "Your appeal is registered as case {number}. Its category and place are being confirmed; "
              "the grid centre will assign it shortly. Reply with the case number or STATUS to follow it.",
    },
    "ask_what": {
        "zh": "您好，这里是网格服务热线。请问您要反映什么问题？请直接发送情况和地点，"
              "例如：“小区3号楼门口垃圾三天没人清”。",
        "en": "Hello, this is the grid service line. What would you like to report? Send what is wrong and "
              "where, e.g. \"Rubbish not collected outside Building 3 for three days\".",
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
    # --- to residents, as their case moves ---
    "assigned": {
        "zh": "您的诉求{number}已分派给{worker}（{role}）办理，办理时限{deadline}。",
        "en": "Case {number} is now with {worker} ({role}), due {deadline}.",
    },
    "escalated": {
        "zh": "您的诉求{number}已上报至{unit}协调办理。",
        "en": "Case {number} has been escalated to {unit}.",
    },
    "rejected": {
        "zh": "您的诉求{number}不属于受理范围：{reason}",
        "en": "Case {number} cannot be handled by the city: {reason}",
    },
    "merged": {
        "zh": "您的诉求{number}与案件{into}为同一事项，已合并办理，请关注{into}的进度。",
        "en": "Case {number} is the same matter as case {into} and was merged into it; follow {into}.",
    },
    "resolved": {
        "zh": "您的诉求{number}已办结：{note}\n请评价：回复1-5分，或“满意”“基本满意”“不满意”。",
        "en": "Case {number} is resolved: {note}\nPlease rate it: reply 1-5 (5 = very satisfied).",
    },
    "question": {
        "zh": "关于您的诉求{number}，网格员想了解：{question}\n请直接回复。",
        "en": "About case {number}, the grid worker asks: {question}\nPlease reply to this message.",
    },
    "info_received": {"zh": "已将补充信息转给办理人员（案件{number}）。",
                      "en": "Your answer was passed on (case {number})."},
    "rated": {"zh": "感谢您的评价，案件{number}已关闭。", "en": "Thank you. Case {number} is closed."},
    "reopened": {"zh": "很抱歉未能让您满意，案件{number}已重新办理，网格长将跟进。",
                 "en": "Sorry it was not resolved to your satisfaction. Case {number} is reopened; "
                       "the grid leader will follow it up."},
    "attached": {"zh": "已附加到案件{number}。", "en": "Added to case {number}."},
    "attach_nothing": {"zh": "请先发送问题描述，再补充照片或位置。",
                       "en": "Please describe the problem first, then add photos or a location."},
    "welcome": {
        "zh": "您好，这里是网格服务平台。直接发送问题描述即可提交诉求。分享手机号可关联您的登记信息。",
        "en": "Hello, this is the grid service line. Send a description of a problem to report it. "
              "Share your phone number to link your registration.",
    },
    "share_contact": {"zh": "分享手机号", "en": "Share my phone number"},
    "linked": {"zh": "已关联登记居民{name}。", "en": "Linked to the registered resident {name}."},
    "not_registered": {"zh": "该手机号未登记，您仍可直接提交诉求。",
                       "en": "That number is not registered; you can still report problems here."},
    "unsupported": {"zh": "暂不支持此类消息，请发送文字描述。", "en": "Please send text: this kind of message "
                                                                   "is not supported."},
    "nobody": {"zh": "待分派", "en": "not yet assigned"},
    "nowhere": {"zh": "待核实", "en": "to be confirmed"},
}

# --- to grid workers, on the workers' bot (Chinese: the staff roster's working language) ---
WORKER_TEMPLATES: dict[str, str] = {
    "alert": "【新任务】案件{number}\n分类：{category}\n地点：{place}\n内容：{text}\n办理时限：{deadline}{extra}",
    "escalated_alert": "【上报任务】案件{number}由{source}上报：{reason}\n分类：{category}\n地点：{place}\n"
                       "内容：{text}\n办理时限：{deadline}",
    "inform_leader": "【知悉】网格案件{number}（{category}，{place}）已分派给{worker}。",
    "reopened_leader": "【重办】案件{number}居民评价不满意，已重新办理，请跟进。办理人：{worker}。",
    "reminder": "【提醒】案件{number}将于{deadline}到期，请及时办理。",
    "triage": "【待分拣】案件{number}无法自动分派（{why}）。内容：{text}\n建议：{suggestions}",
    "accepted": "已接单：案件{number}。",
    "ask_note": "请回复案件{number}的办结说明（可附照片）。",
    "ask_reason": "请回复无法办理、需要上报案件{number}的原因。",
    "ask_question": "请回复要向居民询问的问题（案件{number}）。",
    "resolved": "案件{number}已办结，已通知居民评价。",
    "escalated": "案件{number}已上报至{unit}。",
    "question_sent": "已向居民转达问题（案件{number}）。",
    "answer": "居民就案件{number}回复：{text}",
    "photo_saved": "照片已附加到案件{number}，请继续回复办结说明。",
    "not_yours": "案件{number}不在您的待办中。",
    "refused": "无法执行：{reason}",
    "tasks": "您的待办（按时限）：\n{lines}",
    "no_tasks": "您目前没有待办案件。",
    "logged": "民情日志已记录（#{id}）。如需立案请点击下方按钮。",
    "log_to_case": "已将民情日志#{id}立案，编号{number}。",
    "hello": "您好，{name}（{role}）。任务会推送到这里；/tasks 查看待办，/log 记录民情日志。",
    "stranger": "您好，此机器人仅供登记在册的网格工作人员使用。居民请使用居民服务机器人。",
    "help": "点击任务下方的按钮办理；/tasks 查看待办；/case 编号 查看案件全文；/log 内容 记录民情日志。",
    "case_text": "案件{number}全文（{part}/{parts}）：\n{text}",
}
ROLE_NAMES = {"grid_leader": "网格长", "grid_worker": "专职网格员", "volunteer": "兼职网格员",
              "community_officer": "社区干部", "street_officer": "街道干部", "dept_staff": "部门工作人员"}
ROLE_NAMES_EN = {"grid_leader": "grid leader", "grid_worker": "grid worker", "volunteer": "volunteer",
                 "community_officer": "community officer", "street_officer": "street officer",
                 "dept_staff": "department staff"}

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


def worker_text(key: str, **fields: object) -> str:
    return WORKER_TEMPLATES[key].format(**fields)


def role_name(role: str, language: str) -> str:
    return (ROLE_NAMES_EN if language == "en" else ROLE_NAMES).get(role, role)


def excerpt(text: str, number: str, limit: int = EXCERPT) -> str:
    """At most `limit` characters of what a person wrote, then how long it was and where the rest is."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"…（共{len(text)}字，全文：/case {number}）"


def clip(text: str, limit: int = QUOTE) -> str:
    """`text` cut to at most `limit` characters, the cut marked."""
    return text if len(text) <= limit else text[:limit - 1] + "…"

"""Static tables behind the demo data: names, places, sources, products, tags, tiers.

Weights are rough shares, not statistics: enough to make lists, charts and segments look like
a mid-sized beauty brand's private domain (female-leaning, big-city-heavy, mostly on WeChat).
"""

DEMO_MINIPROGRAM_APP_ID = "wxdemo0001miniapp"
DEMO_OFFICIAL_ACCOUNT_APP_ID = "wxdemo0002officialacc"
DEMO_WECOM_CORP_ID = "wwdemo0003corp"

# (surname, weight): the most common surnames, roughly by frequency, plus a few compound ones.
SURNAMES = [
    ("王", 7.1), ("李", 7.0), ("张", 6.8), ("刘", 5.4), ("陈", 4.5), ("杨", 3.1), ("黄", 2.3),
    ("赵", 2.2), ("吴", 2.0), ("周", 1.9), ("徐", 1.5), ("孙", 1.4), ("马", 1.3), ("朱", 1.3),
    ("胡", 1.2), ("郭", 1.1), ("何", 1.1), ("林", 1.1), ("高", 1.0), ("罗", 1.0), ("郑", 0.9),
    ("梁", 0.9), ("谢", 0.8), ("宋", 0.7), ("唐", 0.7), ("许", 0.7), ("韩", 0.6), ("冯", 0.6),
    ("邓", 0.6), ("曹", 0.6), ("彭", 0.6), ("曾", 0.5), ("肖", 0.5), ("田", 0.5), ("董", 0.5),
    ("潘", 0.4), ("袁", 0.4), ("蔡", 0.4), ("蒋", 0.4), ("余", 0.4), ("于", 0.4), ("杜", 0.4),
    ("叶", 0.4), ("程", 0.4), ("魏", 0.4), ("苏", 0.4), ("吕", 0.4), ("丁", 0.3), ("任", 0.3),
    ("沈", 0.3), ("姚", 0.3), ("卢", 0.3), ("姜", 0.3), ("崔", 0.3), ("钟", 0.3), ("谭", 0.3),
    ("陆", 0.3), ("汪", 0.3), ("范", 0.3), ("金", 0.3), ("石", 0.3), ("廖", 0.3), ("贾", 0.3),
    ("夏", 0.2), ("韦", 0.2), ("方", 0.2), ("白", 0.2), ("邹", 0.2), ("孟", 0.2), ("熊", 0.2),
    ("秦", 0.2), ("邱", 0.2), ("江", 0.2), ("尹", 0.2), ("薛", 0.2), ("段", 0.2), ("雷", 0.2),
    ("侯", 0.2), ("龙", 0.2), ("史", 0.2), ("陶", 0.2), ("黎", 0.2), ("贺", 0.2), ("顾", 0.2),
    ("毛", 0.2), ("郝", 0.2), ("龚", 0.2), ("邵", 0.2), ("万", 0.2), ("钱", 0.2), ("严", 0.2),
    ("欧阳", 0.05), ("上官", 0.02), ("司马", 0.02), ("诸葛", 0.01),
]  # fmt: skip

FEMALE_GIVEN = (
    "婷静丽敏芳娜雪琳欣怡佳雨涵悦梦晨思诗倩颖洁玲萍燕慧嘉瑶琪璐露媛楠妍婉蕾薇月晓秀美彤可馨"
)
MALE_GIVEN = "伟强磊军洋勇杰涛超明刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭宁龙林阳博文昊轩睿泽晨子"
NEUTRAL_GIVEN = "一安子文清嘉雨晨思宇欣然乐天"

NICKNAMES = [
    "小{g}", "{g}{g}", "阿{g}", "{g}宝", "Amy", "Lily", "Coco", "Momo", "Kiki", "Vivian",
    "Jason", "Kevin", "追光的人", "一只小熊", "橘子汽水", "慢慢来", "向日葵", "晴天", "柠檬不酸",
    "momo酱", "桃桃", "芋圆", "Sunny", "早安", "山海", "不吃香菜",
]  # fmt: skip

# (province, city, city code used in QR codes, weight)
CITIES = [
    ("上海", "上海", "SH", 13.0),
    ("北京", "北京", "BJ", 10.0),
    ("广东", "广州", "GZ", 7.0),
    ("广东", "深圳", "SZ", 8.0),
    ("广东", "东莞", "DG", 1.8),
    ("广东", "佛山", "FS", 1.8),
    ("浙江", "杭州", "HZ", 6.0),
    ("浙江", "宁波", "NB", 1.8),
    ("浙江", "温州", "WZ", 1.2),
    ("江苏", "南京", "NJ", 4.0),
    ("江苏", "苏州", "SU", 4.0),
    ("江苏", "无锡", "WX", 1.4),
    ("四川", "成都", "CD", 5.5),
    ("湖北", "武汉", "WH", 4.0),
    ("重庆", "重庆", "CQ", 3.5),
    ("天津", "天津", "TJ", 2.5),
    ("陕西", "西安", "XA", 2.5),
    ("湖南", "长沙", "CS", 2.5),
    ("福建", "厦门", "XM", 1.5),
    ("福建", "福州", "FZ", 1.3),
    ("山东", "青岛", "QD", 1.8),
    ("山东", "济南", "JN", 1.3),
    ("河南", "郑州", "ZZ", 2.0),
    ("安徽", "合肥", "HF", 1.5),
    ("辽宁", "沈阳", "SY", 1.0),
    ("辽宁", "大连", "DL", 1.0),
    ("云南", "昆明", "KM", 1.0),
    ("黑龙江", "哈尔滨", "HRB", 0.7),
    ("广西", "南宁", "NN", 0.7),
    ("江西", "南昌", "NC", 0.7),
    ("河北", "石家庄", "SJZ", 0.7),
    ("海南", "海口", "HK", 0.4),
    ("贵州", "贵阳", "GY", 0.5),
    ("山西", "太原", "TY", 0.5),
]
# Store districts per city code, as "CODE 名称" pairs: the code goes into store QR codes.
STORE_DISTRICTS = {
    "SH": "JINGAN 静安, XUJIAHUI 徐家汇, LUJIAZUI 陆家嘴, NANJINGXILU 南京西路",
    "BJ": "SANLITUN 三里屯, GUOMAO 国贸, XIDAN 西单, ZHONGGUANCUN 中关村",
    "GZ": "TIANHE 天河, ZHUJIANG 珠江新城, BEIJINGLU 北京路",
    "SZ": "NANSHAN 南山, FUTIAN 福田, LUOHU 罗湖",
    "DG": "NANCHENG 南城",
    "FS": "CHANCHENG 禅城",
    "HZ": "XIHU 西湖, WULIN 武林, BINJIANG 滨江",
    "NB": "TIANYI 天一",
    "WZ": "LUCHENG 鹿城",
    "NJ": "XINJIEKOU 新街口, HEXI 河西",
    "SU": "GUANQIAN 观前街, SIP 园区",
    "WX": "CHONGAN 崇安寺",
    "CD": "CHUNXI 春熙路, TAIKOOLI 太古里, GAOXIN 高新",
    "WH": "JIANGHAN 江汉路, GUANGGU 光谷",
    "CQ": "JIEFANGBEI 解放碑, GUANYINQIAO 观音桥",
    "TJ": "BINJIANGDAO 滨江道",
    "XA": "XIAOZHAI 小寨, QUJIANG 曲江",
    "CS": "WUYI 五一广场, HUANGXING 黄兴路",
    "XM": "SIMING 思明",
    "FZ": "GULOU 鼓楼",
    "QD": "SHINAN 市南",
    "JN": "QUANCHENG 泉城路",
    "ZZ": "ERQI 二七",
    "HF": "ZHENGWU 政务区",
    "SY": "TAIYUANJIE 太原街",
    "DL": "ZHONGSHAN 中山",
    "KM": "NANPING 南屏街",
    "HRB": "ZHONGYANG 中央大街",
    "NN": "CHAOYANG 朝阳",
    "NC": "HONGGUTAN 红谷滩",
    "SJZ": "ZHONGSHAN 中山",
    "HK": "LONGHUA 龙华",
    "GY": "GUANSHANHU 观山湖",
    "TY": "LIUXIANG 柳巷",
}

# (source label, weight, channel-code style). Mostly WeChat-native acquisition.
SOURCES = [
    ("小程序", 30.0, "mp"),
    ("公众号", 16.0, "oa"),
    ("企业微信", 18.0, "wecom"),
    ("门店", 15.0, "store"),
    ("抖音", 9.0, "douyin"),
    ("天猫", 7.0, "tmall"),
    ("线下活动", 5.0, "event"),
]
MINIPROGRAM_CODES = ["MP-HOME-BANNER", "MP-SHARE-CARD", "MP-NEW-GIFT", "MP-SIGNIN"]
OFFICIAL_ACCOUNT_CODES = ["OA-MENU-VIP", "OA-ARTICLE-0412", "OA-ARTICLE-0520", "OA-AUTO-REPLY"]
DOUYIN_CODES = ["DY-LIVE-0315", "DY-LIVE-0501", "DY-SHORTVIDEO-07"]
TMALL_CODES = ["TMALL-ORDER-SYNC", "TMALL-MEMBER-BIND"]
EVENT_CODES = ["EVT-SPRING-POPUP", "EVT-MALL-ROADSHOW", "EVT-BEAUTY-CLASS"]

MOBILE_PREFIXES = [
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "153",
    "155", "156", "157", "158", "159", "166", "173", "176", "177", "180", "181", "182", "183",
    "185", "186", "187", "188", "189", "191", "198", "199",
]  # fmt: skip

# Beijing-time hour of day, weighted: lunch break and the evening are when people shop.
HOUR_WEIGHTS = [
    0.6, 0.3, 0.15, 0.1, 0.1, 0.2, 0.6, 1.5, 2.6, 3.2, 3.6, 4.0,
    5.2, 4.8, 3.8, 3.6, 3.8, 4.2, 4.6, 5.6, 7.0, 7.6, 6.2, 3.0,
]  # fmt: skip

# Interest tags, with (female, male, unknown) affinity used to pick each contact's interests.
INTERESTS = {
    "护肤": (6.0, 2.5, 4.0),
    "彩妆": (4.5, 0.4, 2.0),
    "香水": (2.0, 1.5, 1.5),
    "母婴": (1.8, 0.4, 0.8),
    "运动": (1.2, 3.0, 1.5),
}

# (sku, name, category = interest, list price in yuan)
PRODUCTS = [
    ("SKU-10001", "玻尿酸精华 30ml", "护肤", "299.00"),
    ("SKU-10002", "氨基酸洁面乳 120g", "护肤", "89.00"),
    ("SKU-10003", "烟酰胺美白面膜 5片装", "护肤", "129.00"),
    ("SKU-10004", "清透防晒乳 SPF50+ 50ml", "护肤", "168.00"),
    ("SKU-10005", "抗皱紧致眼霜 15ml", "护肤", "458.00"),
    ("SKU-10006", "臻萃修护套装", "护肤", "1680.00"),
    ("SKU-20001", "丝绒哑光口红 #999", "彩妆", "320.00"),
    ("SKU-20002", "持妆气垫粉底", "彩妆", "268.00"),
    ("SKU-20003", "大地色眼影盘", "彩妆", "199.00"),
    ("SKU-20004", "定妆散粉 8g", "彩妆", "239.00"),
    ("SKU-30001", "白茶淡香水 50ml", "香水", "680.00"),
    ("SKU-30002", "玫瑰香氛礼盒 100ml", "香水", "1280.00"),
    ("SKU-30003", "香氛身体乳 200ml", "香水", "158.00"),
    ("SKU-40001", "婴儿润肤乳 200ml", "母婴", "98.00"),
    ("SKU-40002", "孕妇专用精华油", "母婴", "238.00"),
    ("SKU-40003", "儿童温和洗发沐浴露", "母婴", "79.00"),
    ("SKU-50001", "运动速干T恤", "运动", "159.00"),
    ("SKU-50002", "瑜伽垫 6mm", "运动", "199.00"),
    ("SKU-50003", "运动防晒喷雾", "运动", "139.00"),
]

PAGES = [
    ("/pages/index/index", "首页"),
    ("/pages/category/index", "分类"),
    ("/pages/member/center", "会员中心"),
    ("/pages/activity/618", "年中大促会场"),
    ("/pages/article/skincare-tips", "换季护肤指南"),
    ("/pages/store/locator", "附近门店"),
    ("/pages/coupon/list", "领券中心"),
]
FORMS = ["会员注册", "新品试用申请", "门店预约", "肤质测试", "活动报名"]
SHARE_TARGETS = ["friend", "moments", "group"]
REDEMPTION_GIFTS = [("小样礼盒", 200), ("满200减30券", 300), ("定制化妆包", 500)]

# The demo's custom fields, defined before contacts carry them: (key, label, kind, choices).
# The generator fills skin_type from SKIN_TYPES and preferred_store with a store's name.
SKIN_TYPES = ("干性", "油性", "混合性", "敏感性", "中性")
CUSTOM_FIELDS = [
    ("skin_type", "肤质", "single_choice", list(SKIN_TYPES)),
    ("preferred_store", "常去门店", "text", []),
]

TAG_GROUPS = [
    ("兴趣", [(name, color) for name, color in zip(INTERESTS, (
        "#ec4899", "#f43f5e", "#a855f7", "#f59e0b", "#10b981"), strict=True)]),
    ("价值", [("高价值", "#dc2626"), ("潜力客户", "#f97316"), ("价格敏感", "#64748b")]),
    ("渠道", [("门店到访", "#0ea5e9"), ("直播间", "#8b5cf6"), ("社群活跃", "#22c55e")]),
    ("生命周期", [("新客", "#3b82f6"), ("首购", "#06b6d4"), ("复购", "#14b8a6"),
              ("沉睡", "#9ca3af")]),
]  # fmt: skip

# (name, code, rank, minimum growth value, colour)
TIERS = [
    ("普通会员", "basic", 1, 0, "#94a3b8"),
    ("银卡会员", "silver", 2, 500, "#a8b5c8"),
    ("金卡会员", "gold", 3, 2000, "#d4a017"),
    ("黑金会员", "black_gold", 4, 8000, "#1f2937"),
]

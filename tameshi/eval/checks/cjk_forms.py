"""Chinese character forms that modern Japanese does not use, each with the form Japanese writes.

Why a list on top of the cp932 test: most simplified-only forms (这 说 们 时) are outside JIS X 0208
and the encoding test catches them, but some simplified forms (个 价 网 无 气 梦) and nearly all
traditional forms (國 學 會 對 體 氣 經) *are* in JIS X 0208 (it keeps old forms for names and old
texts), so only a list can flag them.

The rule each entry follows: the character is not used in modern Japanese prose (post-1946 shinjitai,
the Jōyō and Jinmeiyō lists); its Japanese counterpart is. Deliberately left out, because Japanese uses
them: shared forms (国 学 会 体 来 条 机 画 随 称 没 麦 黄), kanji with their own Japanese use (這う,
云々, 於いて, 裡 as in 秘密裡, 個, 係, 還), and old forms common in family names (澤 邊 齋 濱 櫻 瀨 髙
﨑 彌 惠 曉). Family names written in old forms (渡邊, 國學院) will be flagged and show in the evidence.
"""

from __future__ import annotations


def _pairs(spec: str) -> dict[str, str]:
    """ "这這 说説" → {"这": "這", "说": "説"}; a "-" means Japanese has no one-character equivalent."""
    out = {}
    for pair in spec.split():
        out[pair[0]] = "" if pair[1] == "-" else pair[1]
    return out


SIMPLIFIED = _pairs(
    """
    这這 说説 们- 个個 时時 对対 过過 还還 发発 经経 现現 实実 样様 种種 问問 题題 间間 东東 车車
    门門 马馬 长長 见見 开開 关関 书書 头頭 龙竜 鸟鳥 鱼魚 页頁 风風 飞飛 为為 专専 业業 两両 么-
    认認 让譲 议議 记記 讲講 论論 识識 语語 话話 读読 请請 谁誰 调調 谢謝 银銀 钱銭 铁鉄 错錯 难難
    电電 网網 线線 约約 级級 红紅 给給 统統 图図 团団 园園 圆円 边辺 进進 远遠 运運 选選 连連 适適
    钟鐘 队隊 阳陽 际際 陆陸 验験 鸡鶏 齐斉 态態 总総 战戦 报報 无無 杀殺 极極 构構 标標 树樹 桥橋
    梦夢 检検 欢歓 气気 汉漢 测測 济済 热熱 爱愛 环環 离離 积積 笔筆 简簡 组組 细細 织織 终終 结結
    绘絵 继継 续続 编編 职職 联連 脑脳 艺芸 节節 药薬 获獲 营営 蓝藍 补補 观観 规規 视視 觉覚 计計
    训訓 设設 访訪 证証 评評 诉訴 词詞 译訳 试試 诗詩 该該 误誤 课課 贝貝 负負 财財 责責 货貨 质質
    购購 贵貴 费費 资資 轮輪 软軟 轻軽 较較 输輸 达達 迟遅 针針 钢鋼 锁鎖 键鍵 镜鏡 闻聞 阅閲 险険
    顺順 须須 顾顧 预預 领領 频頻 颜顔 额額 饭飯 饮飲 馆館 鲜鮮 齿歯 龄齢 价価 从従 犹猶 烟煙 隶隷
    苹- 买買 卖売 乐楽 农農 动動 务務 办弁 压圧 厅庁 历歴 县県 区区 医医 华華 单単 卫衛 帅帥 师師
    """
)
# 区 and 医 are Japanese: the pairs above map them to themselves and are dropped just below.
SIMPLIFIED = {k: v for k, v in SIMPLIFIED.items() if k != v}

TRADITIONAL = _pairs(
    """
    國国 學学 會会 說説 對対 來来 爲為 與与 實実 體体 氣気 經経 發発 當当 數数 樂楽 變変 圖図 廣広
    讀読 聲声 點点 鐵鉄 們- 麼- 嗎- 沒没 遞逓 隨随 隱隠 驗験 麥麦 齊斉 齡齢 總総 戀恋 戰戦 擴拡 擔担
    擇択 據拠 攜携 攝摂 搖揺 鬥闘 舊旧 晝昼 顯顕 雜雑 權権 條条 樣様 檢検 樓楼 歡歓 殘残 淺浅 濟済
    灣湾 濕湿 滿満 滯滞 潛潜 靈霊 爐炉 獨独 狹狭 獵猟 獻献 畫画 稱称 穩穏 竊窃 纖繊 續続 繼継 縱縦
    繪絵 肅粛 腦脳 臟臓 藝芸 藥薬 榮栄 營営 蠻蛮 觀観 覽覧 覺覚 讓譲 譯訳 賣売 壓圧 鹽塩 擧挙 彈弾
    縣県 廳庁 區区 醫医 團団 號号 獎奨 應応 惡悪 觸触 證証 驛駅 轉転 輕軽 關関 險険 雙双 聽聴 歸帰
    歷歴 燒焼 將将 壞壊 懷懐 戲戯 拂払 拔抜 寫写 處処 佛仏 假仮 價価 兒児 兩両 劍剣 勞労 勵励 勸勧
    參参 圍囲 圓円 寶宝 專専 屬属 帶帯 廢廃 從従 拜拝 收収 效効 斷断 曆暦 歐欧 毆殴 淨浄 爭争 獸獣
    產産 盜盗 眞真 禮礼 禪禅 繩縄 臺台 莊荘 藏蔵 蟲虫 裝装 譽誉 豐豊 贊賛 踐践 辭辞 遲遅 醉酔 釋釈
    錢銭 鎭鎮 陷陥 靜静 驅駆 髮髪 默黙 龜亀 黃黄 妳-
    """
)
# Characters of Chinese grammar (question particles, pronouns) that Japanese prose never uses.
CHINESE_FUNCTION = _pairs("吗- 呢- 吧- 啊- 您- 她- 哪- 咱- 俩- 啥- 嘛- 呗-")

# Kanji of the 2010 Jōyō list that are outside JIS X 0208 (so cp932 cannot encode them) — still Japanese.
JOYO_OUTSIDE_JIS0208 = frozenset("𠮟剝頰塡")


def describe(char: str) -> str | None:
    """Why `char` is not Japanese, if it is on the lists: "simplified form; Japanese writes 説"."""
    for table, kind in (
        (SIMPLIFIED, "simplified"),
        (TRADITIONAL, "traditional"),
        (CHINESE_FUNCTION, "Chinese-only"),
    ):
        if char in table:
            ja = table[char]
            return f"{kind} form; Japanese writes {ja}" if ja else f"{kind} character"
    return None

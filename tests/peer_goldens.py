"""Where the published methods' goldens live (../shared/peers, beside the repository) and the four real triplets
they were made on (../shared/data), for tests/test_peers_*.py; those tests skip when the folders are absent."""
from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PEERS = SHARED / "peers"
DATA = SHARED / "data"
# case -> (anatomical, MR-T2, functional) under DATA, in the order the golden runs fed them
CASES = {
    "case01": ("harvard_trimodal/case01_1_CT.png", "harvard_trimodal/case01_2_MR-T2.png",
               "harvard_trimodal/case01_3_SPECT-Tc.png"),
    "case09": ("harvard_trimodal/case09_1_MR-T1.png", "harvard_trimodal/case09_2_MR-T2.png",
               "harvard_trimodal/case09_3_PET.png"),
    "case18": ("harvard_trimodal/case18_1_MR-Gad.png", "harvard_trimodal/case18_2_MR-T2.png",
               "harvard_trimodal/case18_3_SPECT-Tl.png"),
    "aan21008": ("harvard_aanlib/CT-MRI/CT/21008.png", "harvard_aanlib/CT-MRI/MRI/21008.png",
                 "harvard_aanlib/SPECT-MRI/SPECT/21008.png"),
}

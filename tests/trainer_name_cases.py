"""The trainer-name cases shared by the trainer tests: tokens and how they read, names and why they are refused."""

#: token -> (option, value) as the grammar reads it
TOKENS = {
    "g2": ("gamma", 2.0), "g0.5": ("gamma", 0.5), "g1-1-2-2": ("gamma", (1.0, 1.0, 2.0, 2.0)),
    "bg1": ("gamma_bg", 1.0), "fg2": ("focal_gamma", 2.0), "fg1": ("focal_gamma", 1.0), "k10": ("k", 10.0),
    "k5": ("k", 5.0), "kd20": ("dice_k", 20.0), "fb3": ("focal_beta", 3.0), "lg0.3": ("log_gamma", 0.3),
    "d5": ("dilation", 5), "d0": ("dilation", 0), "50epochs": ("epochs", 50), "20iters": ("iters", 20),
}

#: name -> part of the message refusing it
BAD_NAMES = {
    # tokens that do not parse or do not apply
    "nnUNetTrainerPMDice_x3": "cannot read option 'x3'",
    "nnUNetTrainerPMDice_g2_g3": "given twice",
    "nnUNetTrainerPMDice_k10": "does not apply to nnUNetTrainerPMDice",
    "nnUNetTrainerPMDice_g-1": "cannot read option 'g-1'",
    "nnUNetTrainerPMDice_": "expected nnUNetTrainerPMDice_<option>",
    "nnUNetTrainer_g2": "does not apply to nnUNetTrainer",
    "nnUNetTrainerDice_k10": "does not apply to nnUNetTrainerDice",
    "nnUNetTrainerTopKDice_k10": "does not apply to nnUNetTrainerTopKDice",
    "nnUNetTrainerDBCE_d1.5": "cannot read option 'd1.5'",
    "nnUNetTrainerCELoss_g2": "does not apply to nnUNetTrainerCELoss",
    "nnUNetTrainerPMDice_1epoch": "cannot read option '1epoch'",  # one spelling per budget: <n>epochs
    # values out of range
    "nnUNetTrainerTopKCEPMDice_k0": "0 < k <= 100",
    "nnUNetTrainerTopKDice_kd0": "0 < k <= 100",
    "nnUNetTrainerFocalDiceZhao_kd101": "0 < k <= 100",
    "nnUNetTrainerPMDice_0epochs": "at least 1",
    "nnUNetTrainerLogDice_lg0": "log_gamma must be > 0",
    "nnUNetTrainerFocalDiceWang_fb0": "focal_beta must be > 0",
    # digits outside ASCII are no numbers (Python's \d would read them)
    "nnUNetTrainerPMDice_g\uff11": "characters '\uff11'; a trainer name uses ASCII",
    "nnUNetTrainerPMDice_g\u0662": "characters '\u0662'; a trainer name uses ASCII",
    "nnUNetTrainerPMDice_\u0665epochs": "a trainer name uses ASCII",
    # absurd values: refused with the range, not read as inf or as a budget of 10**20 epochs
    "nnUNetTrainerPMDice_g" + "9" * 100: "gamma = 1e\\+100 is out of range: 0 <= gamma <= 10",
    "nnUNetTrainerPMDice_g" + "9" * 400: "at most 200 are accepted",  # would be read as inf
    "nnUNetTrainerPMDice_g11": "gamma = 11 is out of range: 0 <= gamma <= 10",
    "nnUNetTrainerPMDice_g1-50": "gamma = 50 is out of range: 0 <= gamma <= 10",
    "nnUNetTrainerPMDice_bg12": "gamma_bg = 12 is out of range",
    "nnUNetTrainerFocalCEPMDice_fg99": "focal_gamma = 99 is out of range: 0 <= focal_gamma <= 10",
    "nnUNetTrainerDBCE_d1000": "dilation = 1000 is out of range: 0 <= dilation <= 100",
    "nnUNetTrainerPMDice_99999999999999999999epochs": "epochs = 1e\\+20 is out of range: 1 <= epochs <= 100000",
    "nnUNetTrainer_1000000iters": "iters = 1e\\+06 is out of range: 1 <= iters <= 100000",
    # too long for nnU-Net's output folder (255 bytes on common file systems)
    "nnUNetTrainerPMDice_g" + "1" * 400: "has 421 characters; at most 200 are accepted",
    "nnUNetTrainerPMDice_" + "_".join(["g1-1"] * 50): "at most 200 are accepted",
}

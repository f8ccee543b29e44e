//! LR schedulers with torch.optim.lr_scheduler's math and `state_dict()`.
